"""Distribution shifts of the paper's robustness test (Fig. 3): Gaussian blur and jigsaw puzzles.

Both work on any ``[B,C,H,W]`` batch, in [0, 1] pixel space or model-normalised: the blur
kernel sums to one and the jigsaw only moves pixels, so each commutes with the per-channel
affine normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["gaussian_blur", "blur_sigma", "jigsaw"]


def blur_sigma(degree: float, height: int, reference_size: int = 32) -> float:
    """The Gaussian's standard deviation in pixels for a blur ``degree`` on an image of ``height``.

    ``degree`` is the standard deviation in pixels of a ``reference_size`` image (CIFAR-10's 32),
    so blurring a CIFAR image before or after upsampling it to 224 is the same shift.
    """
    return float(degree) * height / reference_size


def gaussian_blur(x: torch.Tensor, degree: float, *, reference_size: int = 32) -> torch.Tensor:
    """Blurs a batch with a Gaussian of standard deviation ``blur_sigma(degree, H)``.

    Args:
        x: ``[B,C,H,W]`` images.
        degree: Blur strength, ≥ 0; 0 returns ``x`` unchanged (the same values, a new tensor).
            The sigma grows linearly with it (see :func:`blur_sigma`).
        reference_size: Image size at which ``degree`` is the sigma in pixels.

    Returns:
        ``[B,C,H,W]`` blurred images (reflection padding at the borders).
    """
    if degree < 0:
        raise ValueError(f"blur degree must be >= 0, got {degree}")
    if degree == 0:
        return x.clone()
    b, c, h, w = x.shape
    sigma = blur_sigma(degree, h, reference_size)
    radius = max(1, int(math.ceil(3 * sigma)))
    # Reflection padding needs radius < size; a wider kernel would only average a constant more.
    radius = min(radius, h - 1, w - 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    flat = x.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return flat.reshape(b, c, h, w)


def jigsaw(
    x: torch.Tensor,
    grid: int,
    swaps: int,
    generator: torch.Generator | None = None,
    *,
    disjoint: bool = False,
    return_permutation: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Jigsaw puzzle: cuts each image into ``grid×grid`` tiles and performs ``swaps`` tile swaps.

    Each swap exchanges the contents of two distinct tile positions chosen uniformly at random,
    one swap after another (so a later swap may move a tile an earlier one moved). With
    ``disjoint=True`` the ``2·swaps`` positions are all distinct, so exactly ``2·swaps`` tiles
    leave their place. Every image of the batch gets its own swaps. Use ``grid=2`` and
    ``grid =`` the model's patch grid (the paper's 14 for ViT-B/16 at 224, 8 for the tiny presets).

    Args:
        x: ``[B,C,H,W]`` images; ``H`` and ``W`` divisible by ``grid``.
        grid: Tiles per side.
        swaps: Number of swaps (0: unchanged).
        generator: Source of randomness (CPU generator); ``None`` uses torch's global RNG.
        disjoint: Swap ``swaps`` disjoint pairs (needs ``2·swaps ≤ grid²``).
        return_permutation: Also return ``perm [B, grid²]``: output tile ``p`` (row-major) is
            input tile ``perm[b, p]``.

    Returns:
        The shuffled images ``[B,C,H,W]`` (and the permutation).
    """
    b, c, h, w = x.shape
    if grid < 1 or h % grid or w % grid:
        raise ValueError(f"image {h}×{w} cannot be cut into a {grid}×{grid} grid")
    if swaps < 0:
        raise ValueError(f"swaps must be >= 0, got {swaps}")
    n = grid * grid
    if swaps > 0 and n < 2:
        raise ValueError("a 1×1 grid has no two tiles to swap")
    if disjoint and 2 * swaps > n:
        raise ValueError(f"{swaps} disjoint swaps need {2 * swaps} tiles, a {grid}×{grid} grid has {n}")
    perm = torch.arange(n).repeat(b, 1)
    rows = torch.arange(b)
    if disjoint:
        chosen = torch.rand(b, n, generator=generator).argsort(dim=1)[:, : 2 * swaps]
        i, j = chosen[:, 0::2], chosen[:, 1::2]
        for k in range(swaps):
            a, bb = perm[rows, i[:, k]].clone(), perm[rows, j[:, k]].clone()
            perm[rows, i[:, k]], perm[rows, j[:, k]] = bb, a
    else:
        for _ in range(swaps):
            i = torch.randint(0, n, (b,), generator=generator)
            j = torch.randint(0, n - 1, (b,), generator=generator)
            j = j + (j >= i).long()  # a distinct second tile, uniformly
            a, bb = perm[rows, i].clone(), perm[rows, j].clone()
            perm[rows, i], perm[rows, j] = bb, a
    th, tw = h // grid, w // grid
    tiles = x.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c, th, tw)
    out = tiles[rows[:, None], perm.to(x.device) if x.device.type != "cpu" else perm]
    out = out.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
    return (out, perm) if return_permutation else out
