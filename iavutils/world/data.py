"""Datasets: the embedded (generated, offline) world with object masks, and CIFAR-10.

Embedded datasets (``"embedded"``, ``"source-small"``, ``"source-large"``) are generated from a
seed, nothing downloaded (:mod:`iavutils.world.shapes` draws them); CIFAR-10 is read from its
official files (:mod:`iavutils.world.cifar`); Fashion-MNIST from its IDX files
(:mod:`iavutils.world.fashion_mnist`). :func:`get_dataset` returns any of them by name.

Items are ``(x, y, mask)``: ``x [3,H,W]`` model-normalised with the preset's mean/std and
resized to its input size, ``y`` int, ``mask [H,W]`` float 0/1. CIFAR-10 items are ``(x, y)``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# Moved out of this module; imported back so that every name importable from here stays so.
# Tests patch _download_cifar in iavutils.world.cifar, where _open_cifar reads it.
from .cifar import (
    CIFAR10_CLASSES,
    CIFAR10Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    read_cifar_batch,
    read_cifar_meta,
)
from .preprocess import _info_stats, _prepare
from .shapes import DATASETS, EMBEDDED_CLASSES, IMAGE_SIZE, generate

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
