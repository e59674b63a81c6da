"""From native pixels to a model's input: the resize and normalisation every dataset applies.

A :class:`~iavutils.world.presets.ModelInfo` gives the input size and mean/std; without one,
images stay 32×32 with mean = std = 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .shapes import IMAGE_SIZE


def _info_stats(info) -> tuple[tuple[int, int], tuple, tuple]:
    if info is None:
        return (IMAGE_SIZE, IMAGE_SIZE), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return tuple(info.input_size), tuple(info.mean), tuple(info.std)


def _prepare(x01: torch.Tensor, size: tuple[int, int], mean: tuple, std: tuple) -> torch.Tensor:
    """[B,3,h,w] in [0,1] -> resized, normalised. Upsampling is bilinear, like the paper's resize."""
    if tuple(x01.shape[-2:]) != tuple(size):
        x01 = F.interpolate(x01, size=size, mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x01.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - m) / s
