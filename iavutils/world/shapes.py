"""The generated shapes world: the embedded datasets, drawn from a seed with object masks.

Embedded datasets are drawn deterministically from a seed by vectorised torch code (about a
second, cached in memory): 32×32 RGB images, one object per image on a varied background
(colour gradients, low-frequency colour noise, pixel noise, small distractor fragments), with
the object's per-pixel ground-truth mask. Objects vary in colour, size, position, rotation and
texture (plain, stripes, checker, radial shading). The class is the object's shape; part of the
objects also carry their class's hue (``colour_cue``), a cue that exists only on the object
(distractors have random colours), so a small model learns within an epoch or two but must
still look at the object, and is far from 100%.

* ``"embedded"`` — the finetuning **target**: 10 shape classes (:data:`EMBEDDED_CLASSES`),
  train/val/test = 5000/1000/1000.
* ``"source-small"`` — labelled **source** for pretraining (the ImageNet-1k role): 20 classes of
  other shapes (random superformula outlines), 8000 train / 1000 val images.
* ``"source-large"`` — the larger, more varied source (the ImageNet-21k role): 60 classes, wider
  size range, more distractors, 24000 train / 2000 val images.

The source shapes and their colour statistics differ from the target's; the self-supervised
recipes use the source images without their labels.

:func:`generate` draws a split as native ``uint8`` pixels, labels and masks;
:class:`iavutils.world.data.EmbeddedDataset` serves them to a model.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["EMBEDDED_CLASSES", "DATASETS", "IMAGE_SIZE", "generate"]

EMBEDDED_CLASSES = ("disk", "ring", "square", "triangle", "plus", "star", "crescent", "ellipse", "ell", "frame")

IMAGE_SIZE = 32
_SUPERSAMPLE = 1  # render at 32×32 directly: 4× cheaper than supersampling, edges are fine at this size
_CHUNK = 1024  # images rendered at once; bounds peak memory (~100 MB)


@dataclass(frozen=True)
class _Spec:
    """How one embedded distribution is drawn."""

    kind: str  # "target" (fixed shapes) or "source" (superformula shapes)
    num_classes: int
    splits: dict
    size_range: tuple[float, float]  # object radius in pixels
    distractors: tuple[int, int]  # inclusive range of distractor fragments
    saturated: bool  # target objects have saturated colours; the source any colour
    shape_seed: int = 0
    textured: float = 0.5  # fraction of objects with a texture (stripes, checker, radial)
    clutter: float = 0.4  # amplitude of the low-frequency background noise
    noise: float = 0.08  # max std of the pixel noise
    rotation: float = 2 * math.pi  # rotations are drawn from [0, rotation)
    colour_cue: float = 0.0  # probability that the object's hue is its class's hue (else random)


DATASETS: dict[str, _Spec] = {
    "embedded": _Spec("target", 10, {"train": 5000, "val": 1000, "test": 1000}, (7.0, 12.0), (0, 3), True, colour_cue=0.6),
    "source-small": _Spec("source", 20, {"train": 8000, "val": 1000}, (6.0, 12.0), (0, 3), False, shape_seed=1, colour_cue=0.6),
    "source-large": _Spec(
        "source", 60, {"train": 24000, "val": 2000}, (5.0, 12.5), (0, 5), False, shape_seed=2, colour_cue=0.5, clutter=0.5
    ),
}


# ---------------------------------------------------------------------------------------------
# shapes: inside tests in the object's own frame, radius ~1


def _target_inside(c: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    rho = torch.sqrt(u * u + v * v)
    au, av = u.abs(), v.abs()
    if c == 0:  # disk
        return rho <= 1.0
    if c == 1:  # ring
        return (rho <= 1.0) & (rho >= 0.52)
    if c == 2:  # square
        return torch.maximum(au, av) <= 0.8
    if c == 3:  # equilateral triangle inscribed in the unit circle (inradius 0.5)
        out = torch.ones_like(u, dtype=torch.bool)
        for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):
            out &= u * math.cos(a) + v * math.sin(a) <= 0.5
        return out
    if c == 4:  # plus
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if c == 5:  # five-pointed star
        phi = torch.atan2(v, u)
        return rho <= 0.42 + 0.58 * ((torch.cos(5 * phi) + 1) / 2) ** 2
    if c == 6:  # crescent
        return (rho <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2)
    if c == 7:  # ellipse
        return u * u + (v / 0.45) ** 2 <= 1.0
    if c == 8:  # L
        return ((u >= -0.8) & (u <= -0.2) & (av <= 0.8)) | ((au <= 0.8) & (v >= -0.8) & (v <= -0.2))
    if c == 9:  # hollow square
        m = torch.maximum(au, av)
        return (m <= 0.85) & (m >= 0.5)
    raise ValueError(c)


_PHI_BINS = 360


@functools.lru_cache(maxsize=8)
def _superformula_tables(num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Radius-vs-angle tables ``[K, 360]`` and hollow flags ``[K]`` of the source classes.

    Each class is a superformula outline with its own parameters; near-circles are rejected so
    that no source class looks like the target's disk.
    """
    rng = np.random.default_rng(1000 + seed)
    phi = np.linspace(-np.pi, np.pi, _PHI_BINS, endpoint=False)
    tables, hollow = [], []
    while len(tables) < num_classes:
        m = rng.integers(2, 9)
        n1 = rng.uniform(1.0, 8.0)
        n2, n3 = rng.uniform(0.6, 6.0, size=2)
        b = rng.uniform(0.6, 1.4)
        t = m * phi / 4
        r = (np.abs(np.cos(t)) ** n2 + np.abs(np.sin(t) / b) ** n3) ** (-1.0 / n1)
        r = r / r.max()
        ratio = r.min()
        if not (0.28 <= ratio <= 0.9):
            continue
        tables.append(r)
        hollow.append(rng.random() < 0.3)
    return torch.tensor(np.stack(tables), dtype=torch.float32), torch.tensor(hollow)


# ---------------------------------------------------------------------------------------------
# rendering


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand((n, *shape), generator=g)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # h, s, v: [N] in [0,1] -> [N,3]
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[:, None] - v[:, None] * s[:, None] * f


def _colours(g: torch.Generator, n: int, saturated: bool, hue: torch.Tensor | None = None) -> torch.Tensor:
    h = torch.rand(n, generator=g) if hue is None else hue
    if saturated:
        return _hsv_to_rgb(h, _uniform(g, n, 0.55, 1.0), _uniform(g, n, 0.45, 1.0))
    return _hsv_to_rgb(h, _uniform(g, n, 0.0, 1.0), _uniform(g, n, 0.2, 1.0))


def _class_hue(labels: torch.Tensor, g: torch.Generator, spread: float = 0.04) -> torch.Tensor:
    # golden-ratio spacing keeps neighbouring class indices apart on the colour wheel
    return (labels.float() * 0.618034 + spread * torch.randn(labels.shape, generator=g)) % 1.0


def _render_chunk(spec: _Spec, labels: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders ``len(labels)`` images ``[n,3,32,32]`` in [0,1] and their masks ``[n,32,32]``."""
    n = labels.numel()
    s = IMAGE_SIZE * _SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / _SUPERSAMPLE
    Y, X = torch.meshgrid(coords, coords, indexing="ij")  # pixel units of the 32×32 image
    X, Y = X[None], Y[None]

    # background: a linear gradient between two colours + low-frequency colour noise + pixel noise
    b1, b2 = torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)
    angle = _uniform(g, n, 0, 2 * math.pi)
    t = (X - 16) * torch.cos(angle)[:, None, None] + (Y - 16) * torch.sin(angle)[:, None, None]
    t = (t / 32 + 0.5).clamp(0, 1)[:, None]
    bg = b1[:, :, None, None] * (1 - t) + b2[:, :, None, None] * t
    low = F.interpolate(torch.rand(n, 3, 4, 4, generator=g) - 0.5, size=(s, s), mode="bicubic", align_corners=False)
    bg = bg + low * _uniform(g, n, 0.0, spec.clutter)[:, None, None, None]
    # Muted backgrounds (pulled towards grey) so that the object usually stands out; the task is
    # still far from trivial because of textures, distractors and colour coincidences.
    bg = 0.25 + 0.5 * bg

    # distractor fragments (disks and short bars), drawn under the object
    lo, hi = spec.distractors
    count = torch.randint(lo, hi + 1, (n,), generator=g)
    for k in range(hi):
        active = (count > k)[:, None, None]
        cx, cy = _uniform(g, n, 0, 32)[:, None, None], _uniform(g, n, 0, 32)[:, None, None]
        a = _uniform(g, n, 0, math.pi)[:, None, None]
        length = _uniform(g, n, 0.0, 5.0)[:, None, None]
        width = _uniform(g, n, 0.8, 2.2)[:, None, None]
        du, dv = X - cx, Y - cy
        along = du * torch.cos(a) + dv * torch.sin(a)
        across = -du * torch.sin(a) + dv * torch.cos(a)
        # capsule: distance to a segment of half-length `length`
        dist = torch.sqrt((along.abs() - length).clamp(min=0) ** 2 + across**2)
        inside = (dist <= width) & active
        col = torch.rand(n, 3, generator=g)[:, :, None, None]
        bg = torch.where(inside[:, None], col, bg)

    # the object
    r_lo, r_hi = spec.size_range
    radius = _uniform(g, n, r_lo, r_hi)
    margin = radius * 0.9
    cx = margin + torch.rand(n, generator=g) * (32 - 2 * margin)
    cy = margin + torch.rand(n, generator=g) * (32 - 2 * margin)
    theta = _uniform(g, n, 0, spec.rotation)
    aspect = _uniform(g, n, 0.9, 1.1)
    du = (X - cx[:, None, None]) / radius[:, None, None]
    dv = (Y - cy[:, None, None]) / radius[:, None, None]
    ct, st = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = (du * ct + dv * st) * aspect[:, None, None]
    v = (-du * st + dv * ct) / aspect[:, None, None]

    inside = torch.zeros(n, s, s, dtype=torch.bool)
    if spec.kind == "target":
        for c in range(spec.num_classes):
            idx = (labels == c).nonzero().squeeze(1)
            if idx.numel():
                inside[idx] = _target_inside(c, u[idx], v[idx])
    else:
        tables, hollow = _superformula_tables(spec.num_classes, spec.shape_seed)
        rho = torch.sqrt(u * u + v * v)
        phi = torch.atan2(v, u)
        bins = ((phi + math.pi) / (2 * math.pi) * _PHI_BINS).long().clamp(0, _PHI_BINS - 1)
        r = tables.flatten()[labels[:, None, None] * _PHI_BINS + bins]
        inner = torch.where(hollow[labels], 0.55, 0.0)[:, None, None]
        inside = (rho <= r) & (rho >= inner * r)

    # texture in the object's frame, so it turns with the object
    # Part of the objects carry their class's hue: a cue a small model picks up within an epoch,
    # found only on the object (distractors have random colours), while the rest must be
    # recognised by shape.
    cue = torch.rand(n, generator=g) < spec.colour_cue
    hue = torch.where(cue, _class_hue(labels, g), torch.rand(n, generator=g))
    c1 = _colours(g, n, spec.saturated, hue)
    c2 = torch.where(torch.rand(n, 1, generator=g) < 0.5, c1 * _uniform(g, n, 0.3, 0.8, 1), _colours(g, n, spec.saturated))
    # plain objects, or striped / checkered / radially shaded ones
    texture = torch.where(torch.rand(n, generator=g) < spec.textured, torch.randint(1, 4, (n,), generator=g), 0)[:, None, None]
    freq = _uniform(g, n, 1.5, 4.0)[:, None, None]
    stripes = (torch.sin(freq * math.pi * u) > 0).float()
    checker = ((torch.sin(freq * math.pi * u) * torch.sin(freq * math.pi * v)) > 0).float()
    radial = torch.sqrt(u * u + v * v).clamp(0, 1)
    p = torch.where(texture == 0, torch.zeros_like(u), torch.where(texture == 1, stripes, torch.where(texture == 2, checker, radial)))
    obj = c1[:, :, None, None] * (1 - p[:, None]) + c2[:, :, None, None] * p[:, None]
    img = torch.where(inside[:, None], obj, bg)
    img = img + torch.randn(img.shape, generator=g) * _uniform(g, n, 0.0, spec.noise)[:, None, None, None]

    img = F.avg_pool2d(img.clamp(0, 1), _SUPERSAMPLE)
    mask = F.avg_pool2d(inside[:, None].float(), _SUPERSAMPLE)[:, 0] >= 0.5
    return img, mask


def _seed_for(name: str, split: str, seed: int) -> int:
    digest = hashlib.sha256(f"{name}/{split}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)


@functools.lru_cache(maxsize=16)
def generate(name: str, split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draws an embedded split (cached in memory; the same for the same arguments everywhere).

    Args:
        name: ``"embedded"``, ``"source-small"`` or ``"source-large"``.
        split: ``"train"``, ``"val"`` or (target only) ``"test"``.
        seed: Base seed of the distribution.

    Returns:
        ``(images uint8 [N,3,32,32], labels int64 [N], masks bool [N,32,32])``.
    """
    spec = DATASETS[name]
    if split not in spec.splits:
        raise ValueError(f"dataset {name!r} has splits {sorted(spec.splits)}, not {split!r}")
    n = spec.splits[split]
    g = torch.Generator().manual_seed(_seed_for(name, split, seed))
    # balanced classes in a shuffled order
    labels = torch.arange(n) % spec.num_classes
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    masks = torch.empty(n, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        img, mask = _render_chunk(spec, labels[sl], g)
        images[sl] = (img * 255).round().to(torch.uint8)
        masks[sl] = mask
    return images, labels, masks
