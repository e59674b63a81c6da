"""Fashion-MNIST: 70 000 real 28×28 grey photographs of garments in 10 classes, with masks.

The garments are photographed on a black background, so the object's pixels are the ones above
a small threshold (:data:`MASK_THRESHOLD`): every image comes with a ground-truth object mask,
as the embedded data does, and localisation metrics and the mask AAV work on real images.

Where the files come from, in this order:

1. ``root`` (an argument), or ``$IAV_DATA`` — either ``<root>/fashion-mnist/`` or torchvision's
   layout ``<root>/FashionMNIST/raw/``; the four original IDX files, gzipped or not.
2. Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``), which
   the project's set-up installs when it runs as root with apt.
3. torchvision's ``FashionMNIST`` download into ``$IAV_DATA`` (or ``root``), only when asked
   (``download=True`` or ``IAV_DOWNLOAD=1``) and the network allows it.

Splits: ``test`` is the official 10 000-image test file, in its order; ``val`` is a fixed,
seeded subset of :data:`VAL_SIZE` images of the official train file; ``train`` is the rest of it.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "MASK_THRESHOLD",
    "VAL_SIZE",
    "DEBIAN_DIR",
    "FashionMNISTDataset",
    "find_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)

#: A pixel belongs to the garment when its grey value (in [0, 1]) exceeds this. The background
#: is black (0); 0.05 keeps faint fabric and drops JPEG-like speckle at the garment's edge.
MASK_THRESHOLD = 0.05

#: Images of the official train file held out as ``val`` (seeded by ``VAL_SEED``; a fifth of
#: a smaller train file, such as the tests' miniature ones).
VAL_SIZE = 5000
VAL_SEED = 0

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {"images": 2051, "labels": 2049}  # uint8 data, 3 and 1 dimensions


class FashionMNISTNotFoundError(FileNotFoundError):
    """The Fashion-MNIST files are in none of the places looked at."""


def _data_root(root: str | os.PathLike | None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get("IAV_DATA", Path.home() / ".cache" / "iav" / "data"))


def _download_requested(download: bool | None) -> bool:
    if download is not None:
        return bool(download)
    return os.environ.get("IAV_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def _candidates(root: Path) -> list[Path]:
    return [root / "fashion-mnist", root / "FashionMNIST" / "raw", root, DEBIAN_DIR]


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> dict[tuple[str, str], Path] | None:
    found = {key: _file_in(folder, stem) for key, stem in _FILES.items()}
    return found if all(found.values()) else None  # type: ignore[return-value]


def _missing_message(root: Path, why: str) -> str:
    files = ", ".join(f"{s}.gz" for s in _FILES.values())
    return (
        f"Fashion-MNIST not found ({why}). Looked in {', '.join(str(c) for c in _candidates(root))}.\n"
        f"Any one of these provides it:\n"
        f"  1. Debian's package: `sudo apt-get install {DEBIAN_PACKAGE}` (installs the original files "
        f"into {DEBIAN_DIR}; the project's `make install` does this when run as root);\n"
        f"  2. the download: set IAV_DOWNLOAD=1 (notebooks, papermill, make) or pass download=True "
        f"(library) on a machine with network access; torchvision then fetches the files into "
        f"{root / 'FashionMNIST' / 'raw'};\n"
        f"  3. files you place: put {files} (gzipped or not) under $IAV_DATA/fashion-mnist/ "
        f"(now: {root / 'fashion-mnist'})."
    )


def find_fashion_mnist(root: str | os.PathLike | None = None, download: bool | None = None) -> dict[tuple[str, str], Path]:
    """Paths of the four IDX files, downloading them only when asked.

    Args:
        root: Data directory (default ``$IAV_DATA`` or ``~/.cache/iav/data``).
        download: Download with torchvision if missing (``None``: ``IAV_DOWNLOAD=1`` decides).

    Returns:
        ``{(split, "images"|"labels"): path}`` for ``split`` in ``train``/``test``.

    Raises:
        FashionMNISTNotFoundError: The files are nowhere and no download was asked for (or it
            failed); the message names the Debian package, the download and ``$IAV_DATA``.
    """
    base = _data_root(root)
    for folder in _candidates(base):
        found = _complete(folder)
        if found:
            return found
    if not _download_requested(download):
        raise FashionMNISTNotFoundError(_missing_message(base, "no download asked for"))
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(base), train=True, download=True)
        FashionMNIST(str(base), train=False, download=True)
    except Exception as err:  # network down, proxy, disk: say what to do instead
        raise FashionMNISTNotFoundError(_missing_message(base, f"download failed: {type(err).__name__}: {err}")) from err
    found = _complete(base / "FashionMNIST" / "raw")
    if not found:
        raise FashionMNISTNotFoundError(_missing_message(base, "the download left no IDX files"))
    return found


def read_idx(path: str | os.PathLike, kind: str, count: int | None = None) -> np.ndarray:
    """Reads one original IDX file (gzipped or not), checking its header.

    Args:
        path: The file.
        kind: ``"images"`` (``uint8 [N,28,28]``) or ``"labels"`` (``uint8 [N]``).
        count: Expected number of items (``None``: any).

    Raises:
        ValueError: The header, size or values are not those of a Fashion-MNIST file; the
            message names the file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot be read as an IDX file ({err}); replace it with the original") from err
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header; replace it with the original")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[kind]:
        raise ValueError(f"{path}: IDX magic {magic}, expected {_IDX_MAGIC[kind]} for {kind}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [28, 28]:
        raise ValueError(f"{path}: images of {dims[1:]} pixels, expected 28×28")
    if count is not None and dims[0] != count:
        raise ValueError(f"{path}: {dims[0]} items, expected {count}")
    size = int(np.prod(dims))
    if len(raw) != header + size:
        raise ValueError(f"{path}: {len(raw) - header} data bytes, the header promises {size} (truncated?)")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    if kind == "labels" and data.size and int(data.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{path}: label {int(data.max())} outside 0..9")
    return data


@functools.lru_cache(maxsize=4)
def _load_split(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(images, "images")
    y = read_idx(labels, "labels", x.shape[0])
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


def _val_indices(n_train: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(VAL_SEED)
    return torch.randperm(n_train, generator=g)[: min(VAL_SIZE, n_train // 5)].sort().values


class FashionMNISTDataset(Dataset):
    """A Fashion-MNIST split: items ``(x [3,H,W] normalised, y int, mask [H,W] float 0/1)``.

    The grey image is repeated over three channels, resized (bilinear) to the model's input size
    and normalised with its mean/std; the mask is the garment's pixels (grey > :data:`MASK_THRESHOLD`),
    resized with nearest neighbours.

    Args:
        split: ``"train"``, ``"val"`` (held-out part of the official train file) or ``"test"``
            (the official test file, in order).
        info: A :class:`iavutils.world.models.ModelInfo` (input size, mean/std); ``None``: 28×28,
            mean = std = 0.5.
        root: Data directory (see the module docstring).
        download: Download if missing (``None``: ``IAV_DOWNLOAD=1`` decides).

    Attributes:
        images: ``uint8 [N,28,28]``. labels: ``int64 [N]``. classes: Class names.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(self, split: str = "train", info=None, root: str | os.PathLike | None = None,
                 download: bool | None = None) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"Fashion-MNIST split must be 'train', 'val' or 'test', not {split!r}")
        self.split, self.info = split, info
        paths = find_fashion_mnist(root, download)
        official = "test" if split == "test" else "train"
        images, labels = _load_split(paths[(official, "images")], paths[(official, "labels")])
        if split != "test":
            held = _val_indices(len(labels))
            keep = held if split == "val" else torch.ones(len(labels), dtype=torch.bool).index_fill_(0, held, False).nonzero().flatten()
            images, labels = images[keep], labels[keep]
        self.images, self.labels = images, labels
        if info is None:
            self.size, self.mean, self.std = (28, 28), (0.5,) * 3, (0.5,) * 3
        else:
            self.size, self.mean, self.std = tuple(info.input_size), tuple(info.mean), tuple(info.std)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, index: torch.Tensor | list[int] | slice = slice(None)) -> torch.Tensor:
        """Native 28×28 pixels in [0, 1], grey repeated over 3 channels: ``[B,3,28,28]``."""
        return (self.images[index].float() / 255)[:, None].expand(-1, 3, -1, -1)

    def get_batch(self, index: torch.Tensor | list[int] | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Items for many indices at once: ``x [B,3,H,W], y [B], mask [B,H,W]``."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        x01 = self.pixels(index)
        mask = (x01[:, 0] > MASK_THRESHOLD).float()
        if tuple(x01.shape[-2:]) != self.size:
            x01 = F.interpolate(x01, size=self.size, mode="bilinear", align_corners=False, antialias=True)
            mask = F.interpolate(mask[:, None], size=self.size, mode="nearest")[:, 0]
        m = torch.tensor(self.mean).view(1, 3, 1, 1)
        s = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x01 - m) / s, self.labels[index], mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        x, y, mask = self.get_batch([int(i)])
        return x[0], int(y[0]), mask[0]

    def __repr__(self) -> str:
        return f"FashionMNISTDataset(split={self.split!r}, n={len(self)}, size={self.size})"
