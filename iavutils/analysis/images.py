"""The held-out images every chapter analyses: the seeded subset, its labels and object masks.

:func:`load_images` draws the same seeded subset of a split for every model, so that maps of
different models (the global-AAV with DINO's SmoothGrad, IAV paper Fig. 7b) are about the same
images. Datasets without object masks (CIFAR-10) are announced with :class:`NoMasksWarning` by
what needs masks, and everything else is computed. Serves every chapter (IAV paper, Figs. 2–9).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["default_split", "load_images", "NoMasksWarning", "has_masks", "warn_no_masks", "class_names"]


def default_split(dataset: str) -> str:
    """The held-out split the figures use: ``val`` for embedded data, ``test`` for CIFAR-10."""
    return "val" if dataset == "embedded" else "test"


def _dataset(dataset: str, split: str, info: Any) -> Any:
    from ..world.data import get_dataset

    return get_dataset(dataset, split=split, info=info)


def _indices(n_total: int, num_images: int | None, seed: int) -> Tensor:
    # The same seeded subset for every model, so that maps of different models (AAV with
    # DINO's SmoothGrad) are about the same images.
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n_total, generator=g)
    if num_images is None or num_images <= 0 or num_images >= n_total:
        return perm
    return perm[: int(num_images)]


def load_images(
    dataset: str, info: Any, num_images: int | None, seed: int = 0, split: str | None = None
) -> dict[str, Tensor]:
    """A seeded subset of a split: ``x`` (model-normalised), ``y``, ``indices`` (and ``mask``).

    Args:
        dataset: ``"embedded"`` or ``"cifar10"``.
        info: The model's :class:`~iavutils.world.models.ModelInfo` (normalisation, size).
        num_images: Subset size (``None``/0: the whole split).
        seed: Chooses the subset.
        split: Default :func:`default_split`.
    """
    ds = _dataset(dataset, split or default_split(dataset), info)
    idx = _indices(len(ds), num_images, seed)
    if hasattr(ds, "get_batch"):
        # Datasets prepare a batch at once: ``(x, y, mask)`` with object masks (embedded data),
        # ``(x, y)`` without (CIFAR-10). Without masks, callers skip what needs them.
        batch = ds.get_batch(idx)
        out = {"x": batch[0], "y": torch.as_tensor(batch[1]).long(), "indices": idx.clone()}
        if len(batch) > 2 and batch[2] is not None:
            out["mask"] = torch.as_tensor(batch[2]).float()
        return out
    xs, ys, masks = [], [], []
    for i in idx.tolist():
        item = ds[i]
        xs.append(torch.as_tensor(item[0]))
        ys.append(int(item[1]))
        if len(item) > 2:
            masks.append(torch.as_tensor(item[2]).float())
    out = {"x": torch.stack(xs), "y": torch.tensor(ys, dtype=torch.long), "indices": idx.clone()}
    if masks and len(masks) == len(xs):
        out["mask"] = torch.stack(masks)
    return out


class NoMasksWarning(UserWarning):
    """The dataset has no object masks: what needs them is skipped, everything else is computed."""


def has_masks(dataset: str) -> bool:
    """Whether the dataset's items carry per-pixel object masks (embedded data and Fashion-MNIST:
    yes; CIFAR-10: no)."""
    return dataset not in ("cifar10", "cifar-10", "CIFAR10")


def warn_no_masks(dataset: str, skipped: str) -> None:
    """States, once per calling line, what a mask-less dataset leaves out (shown in notebooks).

    Args:
        dataset: The dataset name.
        skipped: What is not computed, e.g. ``"the AAV with the object mask"``.
    """
    warnings.warn(
        f"{dataset} has no object masks, so {skipped} cannot be computed; everything else is. "
        "The embedded dataset has masks (dataset='embedded' with the tiny presets).",
        NoMasksWarning, stacklevel=3)


def class_names(dataset: str) -> tuple[str, ...]:
    """Class names of a dataset (for legends)."""
    ds = _dataset(dataset, default_split(dataset), None)
    return tuple(getattr(ds, "classes", ())) or tuple(str(i) for i in range(int(max(ds.labels)) + 1))
