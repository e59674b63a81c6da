"""Datasets: the embedded (generated, offline) world with object masks, and CIFAR-10.

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

Items are ``(x, y, mask)``: ``x [3,H,W]`` model-normalised with the preset's mean/std and
resized to its input size, ``y`` int, ``mask [H,W]`` float 0/1. CIFAR-10 items are ``(x, y)``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "EMBEDDED_CLASSES",
    "CIFAR10_CLASSES",
    "DATASETS",
    "EmbeddedDataset",
    "CIFAR10Dataset",
    "get_dataset",
    "generate",
    "DatasetNotFoundError",
    "DatasetFormatError",
    "read_cifar_batch",
    "read_cifar_meta",
]

EMBEDDED_CLASSES = ("disk", "ring", "square", "triangle", "plus", "star", "crescent", "ellipse", "ell", "frame")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

IMAGE_SIZE = 32
_SUPERSAMPLE = 1  # render at 32×32 directly: 4× cheaper than supersampling, edges are fine at this size
_CHUNK = 1024  # images rendered at once; bounds peak memory (~100 MB)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing and cannot be downloaded."""


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


# ---------------------------------------------------------------------------------------------
# datasets


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


class EmbeddedDataset(Dataset):
    """An embedded split: items ``(x [3,H,W] normalised, y int, mask [H,W] float 0/1)``.

    Args:
        name: ``"embedded"``, ``"source-small"`` or ``"source-large"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        info: A :class:`iavutils.world.models.ModelInfo` (input size, mean/std); ``None``: 32×32, 0.5/0.5.
        seed: Base seed of the distribution.

    Attributes:
        images: ``uint8 [N,3,32,32]`` native pixels. labels: ``int64 [N]``. masks: ``bool [N,32,32]``.
        classes: Class names.
    """

    def __init__(self, name: str = "embedded", split: str = "train", info=None, seed: int = 0) -> None:
        self.name, self.split, self.seed, self.info = name, split, seed, info
        self.images, self.labels, self.masks = generate(name, split, seed)
        self.size, self.mean, self.std = _info_stats(info)
        k = DATASETS[name].num_classes
        self.classes = EMBEDDED_CLASSES if name == "embedded" else tuple(f"{name}-{i}" for i in range(k))

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, index: torch.Tensor | list[int] | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Items for many indices at once (much faster than one by one): ``x [B,3,H,W], y [B], mask [B,H,W]``."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        x01 = self.images[index].float() / 255
        x = _prepare(x01, self.size, self.mean, self.std)
        mask = self.masks[index].float()
        if tuple(mask.shape[-2:]) != tuple(self.size):
            mask = F.interpolate(mask[:, None], size=self.size, mode="nearest")[:, 0]
        return x, self.labels[index], mask

    def pixels(self, index: torch.Tensor | list[int] | slice = slice(None)) -> torch.Tensor:
        """Native 32×32 pixels in [0, 1] ``[B,3,32,32]`` (figures, shifts)."""
        return self.images[index].float() / 255

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        x, y, mask = self.get_batch([int(i)])
        return x[0], int(y[0]), mask[0]

    def __repr__(self) -> str:
        return f"EmbeddedDataset({self.name!r}, split={self.split!r}, n={len(self)}, size={self.size})"


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]
_CIFAR_META = "batches.meta"
_CIFAR_FILES = _CIFAR_TRAIN + _CIFAR_TEST + [_CIFAR_META]


class DatasetFormatError(ValueError):
    """A dataset file is not in the official format (damaged, or crafted to run code)."""


def _default_cifar_root() -> Path:
    return Path(os.environ.get("IAV_DATA", Path.home() / ".cache" / "iav" / "data"))


def _download_from_env() -> bool:
    """``IAV_DOWNLOAD`` from the environment: how notebooks (papermill) ask for downloads."""
    value = os.environ.get("IAV_DOWNLOAD", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"IAV_DOWNLOAD={os.environ['IAV_DOWNLOAD']!r} is not understood; set it to 1 (download missing data) or 0")


class CIFAR10Dataset(Dataset):
    """CIFAR-10 with the paper's preprocessing: resize to the model's input size, its mean/std.

    Reads the standard python-format files (``cifar-10-batches-py`` under ``root``) with a
    restricted unpickler that admits only the official structure (dicts, lists, strings, bytes,
    ints and uint8 NumPy arrays; see :func:`read_cifar_batch`), so a crafted file cannot run
    code. An archive ``cifar-10-python.tar.gz`` placed in ``root`` is extracted. With
    ``download=True`` (or ``IAV_DOWNLOAD=1`` in the environment) torchvision downloads and
    checksums the official archive; offline, a :class:`DatasetNotFoundError` says which file to
    put where.

    Items are ``(x [3,H,W] normalised, y int)``.

    Args:
        split: ``"train"`` or ``"test"`` (``"val"`` is accepted for ``"test"``: CIFAR-10 has no
            separate validation split and the paper validates on the test set).
        info: A :class:`iavutils.world.models.ModelInfo`; ``None``: 32×32, 0.5/0.5.
        root: Directory holding ``cifar-10-batches-py`` (default ``$IAV_DATA`` or
            ``~/.cache/iav/data``).
        download: Download if missing; ``None``: from the environment variable ``IAV_DOWNLOAD``
            (``1``: download), so that notebooks run by papermill can ask for it.
    """

    classes = CIFAR10_CLASSES

    def __init__(
        self, split: str = "train", info=None, root: str | os.PathLike | None = None, download: bool | None = None
    ) -> None:
        if split not in ("train", "test", "val"):
            raise ValueError(f"CIFAR-10 has splits 'train' and 'test', not {split!r}")
        self.split = split
        self.root = Path(root) if root is not None else _default_cifar_root()
        self.size, self.mean, self.std = _info_stats(info)
        self.info = info
        if download is None:
            download = _download_from_env()
        self.data, self.labels = _open_cifar(self.root, train=(split == "train"), download=download)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return 10

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, index: torch.Tensor | list[int] | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Items for many indices at once: ``x [B,3,H,W], y [B]``."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        return _prepare(self.data[index].float() / 255, self.size, self.mean, self.std), self.labels[index]

    def pixels(self, index: torch.Tensor | list[int] | slice = slice(None)) -> torch.Tensor:
        """Native pixels in [0, 1] ``[B,3,32,32]``."""
        return self.data[index].float() / 255

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.get_batch([int(i)])
        return x[0], int(y[0])


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the official CIFAR-10 files hold.

    Plain containers and scalars need no globals at all. The only globals admitted are those
    NumPy uses to rebuild an array and its dtype, and ``_codecs.encode``, with which protocol-2
    pickles written by Python 3 spell ``bytes``. Anything else (``os.system``, ``builtins.eval``,
    any class with a ``__reduce__`` payload) is refused before it is called.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    })

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 str -> str, as torchvision reads them
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DatasetFormatError(
                f"{self.path} is not an official CIFAR-10 file: it asks to load {module}.{name}, which "
                f"the official files never contain (it may be crafted to run code, so it was not "
                f"unpickled). Delete it and put the files from the official archive ({_CIFAR_URL}) there."
            )
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise DatasetFormatError(f"{self.path} is not an official CIFAR-10 file (it uses persistent ids)")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except DatasetFormatError:
        raise
    except Exception as err:
        raise DatasetFormatError(
            f"{path} is not a readable CIFAR-10 file ({type(err).__name__}: {err}); it may be truncated. "
            f"Replace it with the file from the official archive ({_CIFAR_URL})."
        ) from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path} is not an official CIFAR-10 file: it holds a {type(obj).__name__}, not a dict")
    # Official files were written by Python 2 (str keys once read as latin1); files written by
    # Python 3 in the same format have bytes keys.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 python-format batch with the restricted unpickler and checks it.

    Args:
        path: A ``data_batch_*`` or ``test_batch`` file.

    Returns:
        ``(data uint8 [N,3072], labels int64 [N])``; each row is the R, G, B planes, row-major.

    Raises:
        DatasetFormatError: The file references anything but the official structure, or its
            data are not ``uint8 [N,3072]`` with ``N`` integer labels in ``0..9``. The message
            names the file.
    """
    path = Path(path)
    batch = _unpickle(path)
    missing = {"data", "labels"} - set(batch)
    if missing:
        raise DatasetFormatError(f"{path} is not a CIFAR-10 batch: it has no {sorted(missing)} entry (keys: {sorted(map(str, batch))})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: 'data' must be a uint8 array [N, 3072], got {desc}")
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DatasetFormatError(f"{path}: 'labels' must be a list of ints")
    if len(labels) != data.shape[0]:
        raise DatasetFormatError(f"{path}: {data.shape[0]} images but {len(labels)} labels")
    if labels and not (0 <= min(labels) and max(labels) <= 9):
        raise DatasetFormatError(f"{path}: labels must be in 0..9, found {min(labels)}..{max(labels)}")
    return data, np.asarray(labels, dtype=np.int64)


def read_cifar_meta(path: str | os.PathLike) -> list[str]:
    """Reads ``batches.meta`` with the restricted unpickler; returns the 10 class names.

    Raises:
        DatasetFormatError: Not the official structure (the message names the file).
    """
    path = Path(path)
    meta = _unpickle(path)
    names = meta.get("label_names")
    if isinstance(names, list):
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) for n in names):
        raise DatasetFormatError(f"{path}: 'label_names' must be a list of 10 class names")
    return names


def _extract_cifar(archive: Path, root: Path) -> None:
    """Extracts the CIFAR-10 folder from a local archive, refusing links and paths outside ``root``."""
    import tarfile

    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if not parts or parts[0] != _CIFAR_DIR or ".." in parts or Path(m.name).is_absolute():
                    continue  # only the dataset folder, nothing that could land elsewhere
                if not (m.isfile() or m.isdir()):
                    continue
                members.append(m)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, members=members, **kwargs)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetFormatError(
            f"cannot extract {archive} ({type(err).__name__}: {err}); it may be truncated. Replace it with "
            f"the official archive ({_CIFAR_URL})."
        ) from None


def _download_cifar(root: Path) -> None:
    """Downloads the official archive with torchvision (md5-checked) and extracts it."""
    import torchvision.datasets.cifar as tv_cifar

    tv_cifar.download_and_extract_archive(
        tv_cifar.CIFAR10.url, str(root), filename=tv_cifar.CIFAR10.filename, md5=tv_cifar.CIFAR10.tgz_md5
    )


def _open_cifar(root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N,3,32,32], labels int64 [N])`` of a split, read with our own reader."""
    folder = root / _CIFAR_DIR

    def present() -> bool:
        return all((folder / f).is_file() for f in _CIFAR_FILES)

    if not present() and (root / _CIFAR_TAR).is_file():
        _extract_cifar(root / _CIFAR_TAR, root)
    if not present():
        if not download:
            raise DatasetNotFoundError(_cifar_missing_message(root, "download is off"))
        try:
            _download_cifar(root)
        except Exception as err:
            if _is_network_error(err):
                raise DatasetNotFoundError(_cifar_missing_message(root, f"download failed: {type(err).__name__}: {err}")) from err
            raise
        if not present():
            raise DatasetNotFoundError(_cifar_missing_message(root, "the download did not produce the expected files"))
    read_cifar_meta(folder / _CIFAR_META)
    parts = [read_cifar_batch(folder / f) for f in (_CIFAR_TRAIN if train else _CIFAR_TEST)]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # uint8 [N,3,32,32]
    return images, torch.from_numpy(labels)


def _is_network_error(err: BaseException) -> bool:
    import urllib.error

    return isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError, OSError))


def _cifar_missing_message(root: Path, why: str) -> str:
    env = os.environ.get("IAV_DATA")
    where = f"$IAV_DATA={env}" if env else "default ~/.cache/iav/data; $IAV_DATA is not set"
    return (
        f"CIFAR-10 not found under {root} ({where}; {why}). Either\n"
        f"  * put the official archive at\n"
        f"        {root / _CIFAR_TAR}\n"
        f"    (from {_CIFAR_URL}; it is extracted on first use), or its extracted folder at\n"
        f"        {root / _CIFAR_DIR}/  (data_batch_1..5, test_batch, batches.meta),\n"
        f"    or point $IAV_DATA at the directory that holds them; or\n"
        f"  * download it, on a machine with network access: set IAV_DOWNLOAD=1 in the environment for "
        f"notebooks and papermill (e.g. `IAV_DOWNLOAD=1 papermill ...`), or pass download=True in the "
        f"library (get_dataset('cifar10', ..., download=True))."
    )


def get_dataset(
    name: str, split: str = "train", info=None, root: str | os.PathLike | None = None, download: bool | None = None, seed: int = 0
):
    """Returns a dataset by name.

    Args:
        name: ``"embedded"`` (target), ``"source-small"``, ``"source-large"``, ``"cifar10"`` or
            ``"fashion-mnist"`` (real garment photos with masks, :mod:`iavutils.world.fashion_mnist`).
        split: ``"train"``, ``"val"``, ``"test"`` (CIFAR-10: ``"train"``/``"test"``).
        info: The model's :class:`~iavutils.world.models.ModelInfo`: images are resized to its input
            size and normalised with its mean/std. ``None``: 32×32 with mean = std = 0.5.
        root: CIFAR-10 directory (ignored for embedded data).
        download: CIFAR-10 only: download if missing. ``None`` (default): from the environment
            variable ``IAV_DOWNLOAD`` (``1``: download), which reaches this from any notebook.
        seed: Embedded only: base seed of the distribution.

    Returns:
        :class:`EmbeddedDataset` (items ``(x, y, mask)``) or :class:`CIFAR10Dataset` (``(x, y)``).
    """
    if name in DATASETS:
        return EmbeddedDataset(name, split, info=info, seed=seed)
    if name in ("fashion-mnist", "fashion_mnist", "FashionMNIST"):
        from .fashion_mnist import FashionMNISTDataset

        return FashionMNISTDataset(split, info=info, root=root, download=download)
    if name in ("cifar10", "cifar-10", "CIFAR10"):
        return CIFAR10Dataset(split, info=info, root=root, download=download)
    raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS) + ['cifar10', 'fashion-mnist']}")
