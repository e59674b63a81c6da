"""The SmoothGrad noise: one stream implementation, the per-image seeds and the dataset seeding rule.

``NoiseStream`` gives standard-normal noise for sample ``k`` of image ``b`` in three modes. The
default ``"gaussian"`` follows the SmoothGrad noise-stream contract of ``ARCHITECTURE.md`` bit
for bit (per-image CPU generators seeded from ``randint(0, 2**62, (B,), generator)``);
``"antithetic"`` (pairs ``±ε``) and ``"quasi"`` (randomly shifted scrambled Sobol points mapped
through the inverse normal CDF) are explicit, non-default variance-reduction modes.
:func:`noise_stream` is the contract's public iterator over noisy copies, drawn from the same
stream that :func:`~iavutils.core.attribution.smoothgrad` uses. :func:`image_seed` is the one
seeding rule for datasets: image ``i`` gets the same noise whatever batch or process computes it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor

from .spec import NOISE_MODES

__all__ = ["NOISE_MODES", "NoiseStream", "image_seed", "noise_seeds", "noise_stream", "pair_seed"]

NoiseMode = Literal["gaussian", "antithetic", "quasi"]

_SOBOL_MAXDIM = torch.quasirandom.SobolEngine.MAXDIM


def noise_seeds(batch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-image seeds of the SmoothGrad noise stream (ARCHITECTURE.md contract).

    Args:
        batch_size: Number of images ``B``.
        generator: CPU generator; ``None`` draws from torch's global RNG.

    Returns:
        ``[B]`` int64 seeds in ``[0, 2**62)``.
    """
    return torch.randint(0, 2**62, (batch_size,), generator=generator)


def image_seed(base_seed: int, index: int) -> int:
    """Seed of the image at dataset ``index``: depends only on ``(base_seed, index)``.

    ``(base_seed << 32) + index`` keeps different base seeds from sharing streams for any
    dataset below 2³² images.
    """
    return ((int(base_seed) << 32) + int(index)) % (2**62)


_MASK64 = (1 << 64) - 1


def pair_seed(image_seed: int, pair: int) -> int:
    """Seed of antithetic pair ``pair`` of an image in the precision mode (:mod:`iavutils.core.precision`).

    The precision mode draws an image's noise as a sequence of antithetic pairs ``(ε_u, −ε_u)``,
    ``u = 0, 1, 2, ...``; ``ε_u`` is the first ``randn(C,H,W)`` draw of a CPU generator seeded with
    ``pair_seed(image_seed, u)``. A round that adds pairs continues the sequence (nothing is
    redrawn), and pair ``u`` depends only on the image's seed and ``u``, not on the batch, the
    round or how many pairs are drawn in all. The mixing is SplitMix64's output ``u + 1`` of the
    state ``image_seed``: nearby image seeds and pair numbers give unrelated seeds.

    Args:
        image_seed: The image's seed (:func:`image_seed` ``(seed, index)`` in the sweeps).
        pair: The pair's number ``u >= 0``.

    Returns:
        A seed in ``[0, 2**62)``.
    """
    z = (int(image_seed) + (int(pair) + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) % (2**62)


class NoiseStream:
    """Standard-normal noise for sample ``k`` of image ``b``, generated lazily per image.

    ``gaussian``: the ``k``-th ``randn(3,H,W)`` draw of a CPU generator seeded with ``seeds[b]``.
    ``antithetic``: even ``k`` draw from that stream, odd ``k`` reuse ``-ε_{k-1}``.
    ``quasi``: ``n`` points of a scrambled Sobol sequence, randomly shifted per image (shift
    seeded from ``seeds[b]``), through ``Φ⁻¹``; inputs with more than ``SobolEngine.MAXDIM``
    values use independently scrambled blocks of dimensions.
    Draws must be requested in increasing ``k`` per image (the engine's image-major order).

    Args:
        seeds: ``[B]`` per-image seeds (:func:`noise_seeds` or :func:`image_seed`).
        shape: Shape of one image's noise, ``(C,H,W)``.
        n: Samples per image (the quasi mode draws all ``n`` points at once; state is freed
            after sample ``n-1``).
        mode: ``"gaussian"``, ``"antithetic"`` or ``"quasi"``.
    """

    def __init__(self, seeds: Tensor, shape: tuple[int, ...], n: int, mode: str) -> None:
        if mode not in NOISE_MODES:
            raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
        self.seeds = [int(s) for s in seeds.tolist()]
        self.shape = shape
        self.n = n
        self.mode = mode
        self._state: dict[int, Any] = {}
        self._next: dict[int, int] = {}

    def take(self, b: int, k: int) -> Tensor:
        """Noise ``[C,H,W]`` of sample ``k`` of image ``b``."""
        expected = self._next.get(b, 0)
        if k != expected:
            raise RuntimeError(f"noise for image {b} requested out of order ({k} != {expected})")
        self._next[b] = k + 1
        if self.mode == "gaussian":
            g = self._state.get(b)
            if g is None:
                g = self._state[b] = torch.Generator().manual_seed(self.seeds[b])
            eps = torch.randn(self.shape, generator=g)
        elif self.mode == "antithetic":
            if k % 2 == 0:
                g = self._state.get(b)
                if g is None:
                    g = self._state[b] = [torch.Generator().manual_seed(self.seeds[b]), None]
                g[1] = torch.randn(self.shape, generator=g[0])
                eps = g[1]
            else:
                eps = -self._state[b][1]
        else:
            pts = self._state.get(b)
            if pts is None:
                pts = self._state[b] = _sobol_normals(self.seeds[b], self.n, self.shape)
            eps = pts[k]
        if k == self.n - 1:
            self._state.pop(b, None)  # free the image's state as soon as its samples are done
        return eps


@functools.lru_cache(maxsize=8)
def _sobol_base(n: int, dim: int) -> Tensor:
    """The first ``n`` points of one fixed scrambled Sobol sequence in ``dim`` dimensions.

    Scrambling costs ~1 s per 3 000 dimensions, so it is done once per shape and every image
    gets its own random shift instead (see ``_sobol_normals``). Prefixes of the cached points
    are the points of a shorter run, so ``n`` and ``n' < n`` agree on the first ``n'``.
    """
    blocks = math.ceil(dim / _SOBOL_MAXDIM)
    width = math.ceil(dim / blocks)
    parts = []
    for i in range(blocks):
        d = min(width, dim - i * width)
        parts.append(torch.quasirandom.SobolEngine(d, scramble=True, seed=i).draw(n, dtype=torch.float64))
    return torch.cat(parts, dim=1)


def _sobol_normals(seed: int, n: int, shape: tuple[int, ...]) -> Tensor:
    """``n`` quasi-random standard normal tensors of ``shape`` for one image.

    Randomised QMC by a Cranley–Patterson rotation: ``u = frac(sobol + U)`` with ``U`` uniform
    per dimension drawn from a CPU generator seeded with ``seed``, so every ``u`` is uniform
    (the estimate stays unbiased) and images are independent; then ``z = Φ⁻¹(u)``. Inputs with
    more than ``SobolEngine.MAXDIM`` values use independently scrambled blocks of dimensions.
    """
    dim = math.prod(shape)
    # the cached base is computed for at least 64 points so short runs share it with long ones
    base = _sobol_base(max(64, 1 << max(0, n - 1).bit_length()), dim)[:n]
    shift = torch.rand(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = torch.remainder(base + shift, 1.0)
    # a shifted point can land exactly on 0; keep the inverse CDF finite
    u = u.clamp(1e-12, 1 - 1e-12)
    z = math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)
    return z.to(torch.float32).view(n, *shape)



def noise_stream(
    x: Tensor,
    n_samples: int,
    noise_level: float,
    generator: torch.Generator | None = None,
    *,
    seeds: Tensor | None = None,
    noise: str = "gaussian",
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield SmoothGrad's noisy copies in the order ``(b, k)``, ``b`` major.

    The contract (ARCHITECTURE.md, "SmoothGrad noise stream"): ``seeds = noise_seeds(B,
    generator)``; image ``b`` gets a CPU generator seeded with ``seeds[b]``; its sample ``k`` is
    its ``k``-th draw ``z = torch.randn(C, H, W)`` (CPU, float32), moved to ``x``'s device and
    dtype; the noisy copy is ``x[b] + sigma_b * z`` with ``sigma_b = noise_level * (x[b].max() -
    x[b].min())`` computed on ``x``'s device. An engine that follows this reproduces
    :func:`~iavutils.core.attribution.smoothgrad` exactly, however it batches the ``B*n``
    passes; :class:`NoiseStream` is the one implementation both use.

    Args:
        x: Images ``[B,C,H,W]``.
        n_samples: Noisy copies per image ``n``.
        noise_level: Noise standard deviation as a fraction of each image's value range.
        generator: CPU generator for the seeds; ``None`` uses torch's global RNG.
        seeds: Explicit ``[B]`` per-image seeds (overrides ``generator``).
        noise: ``"gaussian"`` (the contract), ``"antithetic"`` or ``"quasi"``.

    Yields:
        ``(b, k, x_noisy [C,H,W])``.
    """
    B, C, H, W = x.shape
    seeds = noise_seeds(B, generator) if seeds is None else torch.as_tensor(seeds, dtype=torch.long)
    stream = NoiseStream(seeds, (C, H, W), n_samples, noise)
    sigma = noise_level * (x.detach().flatten(1).amax(1) - x.detach().flatten(1).amin(1))
    for b in range(B):
        for k in range(n_samples):
            z = stream.take(b, k)
            yield b, k, x[b].detach() + sigma[b] * z.to(device=x.device, dtype=x.dtype)
